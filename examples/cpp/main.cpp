// Loads a depthwise op exported by `dwconv-tvm compile` (dw.so + dw.json) and runs it on raw
// little-endian tensors, one file per argument in the sidecar's order:
//
//   dwconv_app dw.so x.bin kernel.bin [bias.bin] out.bin
//
// The sidecar gives the entry function and each argument's shape and dtype; the app checks the
// file sizes against them and passes its own buffers to the kernel as DLTensors (no copies).
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>  // DLTensor* as an argument
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct Argument {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
  bool output = false;
  std::vector<char> data;
  DLTensor tensor;
};

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

DLDataType ParseDtype(const std::string& name) {
  if (name == "float32") return DLDataType{kDLFloat, 32, 1};
  if (name == "float16") return DLDataType{kDLFloat, 16, 1};
  if (name == "float64") return DLDataType{kDLFloat, 64, 1};
  throw std::runtime_error("unsupported dtype " + name);
}

std::string Sidecar(const std::string& library) {
  return library.substr(0, library.rfind('.')) + ".json";
}

// The sidecar names CPU extensions as NumPy does; Linux's /proc/cpuinfo mostly lowercases them.
std::string CpuinfoFlag(const std::string& numpy_name) {
  static const std::map<std::string, std::string> renamed = {
      {"FMA3", "fma"},           {"SSE41", "sse4_1"},           {"SSE42", "sse4_2"},
      {"LZCNT", "abm"},          {"BMI", "bmi1"},               {"AVX512BF16", "avx512_bf16"},
      {"AVX512VNNI", "avx512_vnni"}, {"AVX512VBMI2", "avx512_vbmi2"}, {"AVX512BITALG", "avx512_bitalg"},
      {"AVX512VPOPCNTDQ", "avx512_vpopcntdq"}, {"AVX512FP16", "avx512_fp16"}};
  auto found = renamed.find(numpy_name);
  if (found != renamed.end()) return found->second;
  std::string flag = numpy_name;
  for (char& c : flag) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return flag;
}

// Extensions the library may use that this CPU lacks: its first call would die of SIGILL.
// Empty where /proc/cpuinfo cannot be read (not Linux): unknown is not missing.
std::vector<std::string> MissingCpuFeatures(const ffi::Array<ffi::Any>& wanted) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::set<std::string> flags;
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0) {  // x86 / aarch64
      std::istringstream words(line.substr(line.find(':') + 1));
      for (std::string word; words >> word;) flags.insert(word);
      break;
    }
  }
  std::vector<std::string> missing;
  if (flags.empty()) return missing;
  for (const ffi::Any& name : wanted) {
    const std::string feature(name.cast<ffi::String>());
    if (!flags.count(CpuinfoFlag(feature))) missing.push_back(feature);
  }
  return missing;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 4) {
      std::cerr << "usage: " << argv[0] << " dw.so x.bin kernel.bin [bias.bin] out.bin\n";
      return 2;
    }
    const std::string library = argv[1];
    ffi::Map<ffi::String, ffi::Any> sidecar =
        ffi::json::Parse(ReadText(Sidecar(library))).cast<ffi::Map<ffi::String, ffi::Any>>();
    if (sidecar.count("cpu_features")) {
      std::vector<std::string> missing = MissingCpuFeatures(sidecar["cpu_features"].cast<ffi::Array<ffi::Any>>());
      if (!missing.empty()) {
        std::cerr << library << " was compiled for " << std::string(sidecar["target"].cast<ffi::String>())
                  << ", whose code may use";
        for (const std::string& feature : missing) std::cerr << " " << feature;
        std::cerr << ": this CPU lacks them, and the first call would die of an illegal instruction. "
                     "Export it for this machine (target host) or a baseline such as x86-64-avx2.\n";
        return 3;
      }
    }
    auto specs = sidecar["arguments"].cast<ffi::Array<ffi::Any>>();
    if (static_cast<size_t>(argc - 2) != specs.size()) {
      std::cerr << "expected " << specs.size() << " tensor files after the library\n";
      return 2;
    }
    std::vector<Argument> args(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      auto spec = specs[i].cast<ffi::Map<ffi::String, ffi::Any>>();
      Argument& arg = args[i];
      arg.name = std::string(spec["name"].cast<ffi::String>());
      arg.dtype = ParseDtype(std::string(spec["dtype"].cast<ffi::String>()));
      arg.output = spec.count("output") && spec["output"].cast<bool>();
      int64_t elements = 1;
      for (const ffi::Any& dim : spec["shape"].cast<ffi::Array<ffi::Any>>()) {
        arg.shape.push_back(dim.cast<int64_t>());
        elements *= arg.shape.back();
      }
      const size_t bytes = static_cast<size_t>(elements) * arg.dtype.bits / 8;
      if (arg.output) {
        arg.data.resize(bytes);
      } else {
        std::string content = ReadText(argv[2 + i]);
        if (content.size() != bytes) {
          std::cerr << arg.name << ": " << argv[2 + i] << " has " << content.size() << " bytes, expected "
                    << bytes << "\n";
          return 2;
        }
        arg.data.assign(content.begin(), content.end());
      }
      arg.tensor = DLTensor{arg.data.data(), DLDevice{kDLCPU, 0}, static_cast<int32_t>(arg.shape.size()),
                            arg.dtype,       arg.shape.data(),     nullptr, 0};
    }
    // dlopen takes a bare name as a library to search for, so pass an absolute path.
    ffi::Module module = ffi::Module::LoadFromFile(std::filesystem::absolute(library).string());
    const std::string entry(sidecar["entry"].cast<ffi::String>());
    ffi::Optional<ffi::Function> kernel = module->GetFunction(entry);
    if (!kernel.has_value()) throw std::runtime_error("no function " + entry + " in " + library);
    std::vector<ffi::AnyView> call_args;
    for (Argument& arg : args) call_args.emplace_back(&arg.tensor);
    ffi::Any unused;
    kernel.value().CallPacked(call_args.data(), static_cast<int32_t>(call_args.size()), &unused);
    const Argument& out = args.back();
    std::ofstream(argv[argc - 1], std::ios::binary).write(out.data.data(), static_cast<std::streamsize>(out.data.size()));
    std::cout << library << ": " << entry << " ran, output written to " << argv[argc - 1] << "\n";
    return 0;
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
}

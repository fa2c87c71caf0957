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

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
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

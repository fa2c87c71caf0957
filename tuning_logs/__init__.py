"""Shipped MetaSchedule tuning databases, one folder per target key (read-only at run time)."""

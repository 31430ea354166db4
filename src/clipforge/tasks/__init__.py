"""The systems' Python APIs by task name: `clipforge.tasks.lseg`, ... (each a thin re-export of its
system's package, so user code does not depend on where a system keeps its modules)."""

"""The foundation every layer may use: the device (:mod:`.devices`), torchrun shards (:mod:`.distributed`), atomic
file writes and hashes (:mod:`.files`) and MLflow ids, tags and handlers (:mod:`.tracking`, the one module outside
``medcf.jobs`` that imports MLflow). Nothing here imports another part of medcf."""

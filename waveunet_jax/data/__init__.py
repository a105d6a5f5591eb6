"""The data wing: one record format (`records`, written by `builder`) and the two samplers
over it (`tfdata`, `device`), reached by training through `batches`; the tracks they are
made from (`tracks`, `generator`)."""

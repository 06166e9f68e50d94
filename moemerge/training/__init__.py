"""Router training: the loop (knows no files: a model and token windows in, router tensors out), the training text
(data), and a run over a checkpoint folder with the record it leaves (run, record)."""

"""Running a model over text: loading it (device, memory, 4/8-bit), prompt tokens, batching, token windows, and the
measurements that run a merged model: the routing report (routing) and held-out loss (evaluate, eval_models)."""

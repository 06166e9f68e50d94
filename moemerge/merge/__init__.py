"""The merge: checks (every problem at once), the tensor plan and its costs, the stream of tensors, the writer, Inf/NaN
checks, crash-safe output, rewriting routers in place, verification, and the pipeline that wires them."""

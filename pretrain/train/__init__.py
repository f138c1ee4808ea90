"""The trainer: loop, optimizer and schedule, DCP checkpoints, metrics (TensorBoard, MFU)."""

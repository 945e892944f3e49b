"""What the monitor writes and shows: files of a run and its epochs, the console, the dashboard, TensorBoard."""

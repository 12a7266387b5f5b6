"""What outlives a process: checkpoint files, the payload they hold, and resuming from them."""

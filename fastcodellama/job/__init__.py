"""The pass@k job: tasks, the resumable samples file, generation in this process or on Ray."""

"""The compile pipeline: settings, the run directory, and the stages wired in order."""

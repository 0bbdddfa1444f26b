"""The report: facts the pipeline computed, rendered as JSON, Markdown and plots."""

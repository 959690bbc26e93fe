"""Naming series: header summaries, the classifier, overrides, and finishing converted sidecars."""

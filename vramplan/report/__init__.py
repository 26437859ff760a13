"""Procurement reports: the team's planned jobs, the hardware that runs them all, and what it costs."""

"""The experiment launcher, experiment configs and runners, claims and reports."""

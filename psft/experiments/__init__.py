"""`psft compare` / `psft demo`: plan, runner, result store, report, statistics, plots, presets."""

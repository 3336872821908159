"""Result files: per-job folders, the reducer into sweep tables, comparison statistics, efficiency store."""

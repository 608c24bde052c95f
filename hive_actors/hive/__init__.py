"""The Hive: Queen, Workers, Planner and Reviewer actors on the store; open_hive()."""

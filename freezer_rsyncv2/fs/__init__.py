"""File system side: tree walk on backup, safe restore."""

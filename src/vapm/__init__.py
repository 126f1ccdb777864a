"""vapm: visual & acoustic process monitoring."""

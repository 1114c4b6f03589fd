"""Helpers shared by the test modules (imported as `helpers.*`: pytest puts tests/ on sys.path)."""

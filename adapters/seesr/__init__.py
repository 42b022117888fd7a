"""SeeSR adapter."""

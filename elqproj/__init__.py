"""elqproj: extreme blind image restoration with a prompt-conditioned projector."""

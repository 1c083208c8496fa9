"""Publishing to the Hugging Face Hub (or any Hub-compatible endpoint): repos, folders, cards."""

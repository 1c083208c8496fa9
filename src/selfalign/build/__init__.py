"""Running dataset builders: sharded, resumable, spread over processes, published at the end."""

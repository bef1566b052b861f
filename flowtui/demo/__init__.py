"""The article's scenarios as a runnable demonstration."""

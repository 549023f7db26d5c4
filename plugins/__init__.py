"""gptkit's built-in components. Each module is a plugin registered through the entry-point group
"gptkit", exactly as a third-party package would be."""

"""Channel adapters: each verifies a platform's webhook, parses it, and sends replies back."""

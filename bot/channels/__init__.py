"""Channel adapters: each turns what its provider delivers into ``dialogs.Inbound`` and sends replies."""

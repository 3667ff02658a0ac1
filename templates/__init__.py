"""The default templates: one per chat, and the status page's. Installed as the package
`bridge.templates`; copy the one of your chat to start a template of your own."""

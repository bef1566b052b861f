"""One module per screen: flows, conversations, detail, policies, what-if, SQL, help."""

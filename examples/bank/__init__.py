"""The bank: accounts, transfers between them, and the events they record (schemas in schemas/bank/)."""

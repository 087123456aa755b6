"""`compress report`: one self-contained HTML page of routing statistics, token-level routing,
derived models and size frontiers (`collect` gathers the data, `page` writes the file)."""

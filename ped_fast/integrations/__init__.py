"""Adapters that bring PED to other libraries' model rankers
(docs/integrations.md). Each module imports its library: import the one
you use (ped_fast.integrations.transformer_ranker), which `import
ped_fast` never does."""

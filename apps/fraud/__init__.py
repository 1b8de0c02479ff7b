"""Fraud app: card-transaction data (handbook loader, simulator), the shared feature engine, CLI."""

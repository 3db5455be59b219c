"""Delivery: ephemeral test stacks on the Automation API and the endpoint smoke test."""

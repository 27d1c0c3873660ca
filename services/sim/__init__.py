"""`edgeinfer sim`: replay a real trace through the autoscaler's pure keep-alive policies.

A tool, not a service: it imports only the services' pure policy modules.
"""

"""Avro event contracts: schema files, compatibility, binding to classes, the codec."""

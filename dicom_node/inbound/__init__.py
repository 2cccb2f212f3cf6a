"""Receiving instances: the DICOM SCP (scp, tuning, receivers), HTTP ingest (http, stow), the durable
spool (spool), and the events they report to the study tracker (events)."""

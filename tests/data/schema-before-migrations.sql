CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	idempotency_key VARCHAR(64) NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	series_instance_uid VARCHAR(64), 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	source_path TEXT NOT NULL, 
	instruction TEXT NOT NULL, 
	seed INTEGER NOT NULL, 
	params JSON NOT NULL, 
	model_id VARCHAR(200), 
	model_hash VARCHAR(64), 
	calling_ae VARCHAR(16), 
	called_ae VARCHAR(16), 
	destination VARCHAR(200), 
	origin VARCHAR(20) NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error TEXT, 
	timings JSON NOT NULL, 
	output_uids JSON NOT NULL, 
	result JSON NOT NULL, 
	next_attempt_at DATETIME, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_study_instance_uid ON jobs (study_instance_uid);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE UNIQUE INDEX ix_jobs_idempotency_key ON jobs (idempotency_key);
CREATE INDEX ix_jobs_sop_instance_uid ON jobs (sop_instance_uid);
CREATE TABLE job_leases (
	job_id INTEGER NOT NULL, 
	worker_id VARCHAR(200) NOT NULL, 
	hostname VARCHAR(200) NOT NULL, 
	pid INTEGER NOT NULL, 
	heartbeat_at DATETIME NOT NULL, 
	PRIMARY KEY (job_id)
);
CREATE TABLE workers (
	worker_id VARCHAR(200) NOT NULL, 
	hostname VARCHAR(200) NOT NULL, 
	pid INTEGER NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	started_at DATETIME NOT NULL, 
	seen_at DATETIME NOT NULL, 
	PRIMARY KEY (worker_id)
);
CREATE TABLE studies (
	study_instance_uid VARCHAR(128) NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	calling_ae VARCHAR(16), 
	called_ae VARCHAR(16), 
	instance_count INTEGER NOT NULL, 
	jobs_created INTEGER NOT NULL, 
	skipped_count INTEGER NOT NULL, 
	request_source VARCHAR(20), 
	instruction TEXT, 
	request_error TEXT, 
	first_received_at DATETIME, 
	last_received_at DATETIME, 
	completed_at DATETIME, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (study_instance_uid)
);
CREATE INDEX ix_studies_state ON studies (state);
CREATE TABLE study_instances (
	path TEXT NOT NULL, 
	study_instance_uid VARCHAR(128) NOT NULL, 
	series_instance_uid VARCHAR(128), 
	sop_instance_uid VARCHAR(128), 
	modality VARCHAR(16), 
	status VARCHAR(20) NOT NULL, 
	reason TEXT, 
	job_id INTEGER, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (path)
);
CREATE INDEX ix_study_instances_sop_instance_uid ON study_instances (sop_instance_uid);
CREATE INDEX ix_study_instances_study_instance_uid ON study_instances (study_instance_uid);
CREATE INDEX ix_study_instances_status ON study_instances (status);

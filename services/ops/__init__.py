"""Operations: the processes and containers that run the services (`gflow serve`, `gflow lab`,
the SeaweedFS S3 store), apart from the stages and the pipeline they run."""

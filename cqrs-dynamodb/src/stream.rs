//! The stream processor: reads the command table's DynamoDB stream and feeds the pipeline.

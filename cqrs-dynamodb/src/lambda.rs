//! The Lambda entry point for DynamoDB stream events.

//! DynamoDB as setup and teardown use it: the stack's tables, created with their key,
//! on-demand billing, TTL and tag, corrected and deleted. A second trait
//! beside the everyday one of [`super`], with its own SDK implementation.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    Tag, TimeToLiveSpecification,
};

use crate::aws::StackTag;
use crate::error::{Error, Result};

/// What DescribeTable says of a table, as setup compares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub arn: String,
    /// The partition key, when it is the only key and a string.
    pub string_key: Option<String>,
    pub on_demand: bool,
    pub active: bool,
    pub status: Option<String>,
}

/// What DescribeTimeToLive says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TtlInfo {
    /// `ENABLED`, `ENABLING`, `DISABLED`, `DISABLING`, as DynamoDB spells it.
    pub status: Option<String>,
    pub attribute: Option<String>,
}

pub trait TableAdmin: Sync {
    /// `None` when there is no such table.
    fn table(&self, name: &str) -> impl Future<Output = Result<Option<TableInfo>>> + Send;
    /// A table keyed by `key` (a string), billed per request.
    fn create_table(
        &self,
        name: &str,
        key: &str,
        tag: &StackTag,
    ) -> impl Future<Output = Result<()>> + Send;
    fn set_on_demand(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn table_tags(
        &self,
        name: &str,
        arn: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    fn tag_table(
        &self,
        name: &str,
        arn: &str,
        tag: &StackTag,
    ) -> impl Future<Output = Result<()>> + Send;
    fn ttl(&self, name: &str) -> impl Future<Output = Result<TtlInfo>> + Send;
    fn enable_ttl(&self, name: &str, attribute: &str) -> impl Future<Output = Result<()>> + Send;
    /// `false` when there was nothing to delete.
    fn delete_table(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
}

fn build_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::usage(format!("{what}: {e}"))
}

fn dynamo_tag(tag: &StackTag) -> Result<Tag> {
    Tag::builder()
        .key(&tag.0)
        .value(&tag.1)
        .build()
        .map_err(|e| build_err("tag", e))
}

impl TableAdmin for Client {
    async fn table(&self, name: &str) -> Result<Option<TableInfo>> {
        let t = match self.describe_table().table_name(name).send().await {
            Ok(out) => out.table().cloned(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(Error::aws(format!("Failed to read table '{name}'"), e)),
        };
        let Some(t) = t else {
            return Ok(Some(TableInfo::default()));
        };
        let schema = t.key_schema();
        let string_key = (schema.len() == 1 && schema[0].key_type() == &KeyType::Hash)
            .then(|| schema[0].attribute_name())
            .filter(|k| {
                t.attribute_definitions().iter().any(|d| {
                    d.attribute_name() == *k && d.attribute_type() == &ScalarAttributeType::S
                })
            })
            .map(str::to_string);
        Ok(Some(TableInfo {
            arn: t.table_arn().unwrap_or_default().to_string(),
            string_key,
            on_demand: t
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
                .is_some_and(|m| m == &BillingMode::PayPerRequest),
            active: t.table_status() == Some(&TableStatus::Active),
            status: t.table_status().map(|s| s.as_str().to_string()),
        }))
    }

    async fn create_table(&self, name: &str, key: &str, tag: &StackTag) -> Result<()> {
        self.create_table()
            .table_name(name)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| build_err("key schema", e))?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| build_err("attribute", e))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .tags(dynamo_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to create table '{name}'"), e))?;
        Ok(())
    }

    async fn set_on_demand(&self, name: &str) -> Result<()> {
        self.update_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to switch table '{name}' to on-demand"), e))?;
        Ok(())
    }

    async fn table_tags(&self, name: &str, arn: &str) -> Result<Vec<(String, String)>> {
        let out = self
            .list_tags_of_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read the tags of table '{name}'"), e))?;
        Ok(out
            .tags()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn tag_table(&self, name: &str, arn: &str, tag: &StackTag) -> Result<()> {
        self.tag_resource()
            .resource_arn(arn)
            .tags(dynamo_tag(tag)?)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to tag table '{name}'"), e))?;
        Ok(())
    }

    async fn ttl(&self, name: &str) -> Result<TtlInfo> {
        let out = self
            .describe_time_to_live()
            .table_name(name)
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to read the TTL of table '{name}'"), e))?;
        let d = out.time_to_live_description();
        Ok(TtlInfo {
            status: d
                .and_then(|d| d.time_to_live_status())
                .map(|s| s.as_str().to_string()),
            attribute: d.and_then(|d| d.attribute_name()).map(str::to_string),
        })
    }

    async fn enable_ttl(&self, name: &str, attribute: &str) -> Result<()> {
        self.update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(attribute)
                    .build()
                    .map_err(|e| build_err("TTL", e))?,
            )
            .send()
            .await
            .map_err(|e| Error::aws(format!("Failed to turn on TTL for table '{name}'"), e))?;
        Ok(())
    }

    async fn delete_table(&self, name: &str) -> Result<bool> {
        match self.delete_table().table_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(format!("Failed to delete table '{name}'"), e)),
        }
    }
}

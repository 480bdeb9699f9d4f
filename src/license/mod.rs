//! Licenses: the document model with strict validation ([`document`]) and the pure rules that
//! turn documents, usage and time into statuses and notices ([`rules`]).

pub mod document;
pub mod rules;

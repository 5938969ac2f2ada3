//! Bitrix24 → WhatsApp: an operator's reply arrives as a Bitrix event ([`receive`]), the
//! `bitrix` processor turns each message of it into a send job unless the 24-hour window
//! is closed ([`split`]), and the job sends it to Meta part by part ([`send`]): text converted
//! from BBCode ([`bbcode`]), files fetched from the portal ([`files`], [`portal_file`]), or an
//! approved template ([`template`]). A reply that does not make it is marked and explained to
//! the operator ([`failed`]).

pub mod bbcode;
pub mod changed;
pub mod failed;
pub mod files;
pub mod portal_file;
pub mod receive;
pub mod send;
pub mod split;
pub mod template;

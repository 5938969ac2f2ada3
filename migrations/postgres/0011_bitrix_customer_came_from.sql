-- The ad or post a customer first came from (click-to-WhatsApp referral), in words: the CRM
-- lead names it as its source whichever of the customer's first messages creates the lead.
ALTER TABLE bitrix_customers ADD COLUMN came_from TEXT;

namespace PortAzure.Redis;

/// <summary>The values of a delivery record's <c>state</c> field.</summary>
public static class DeliveryStates
{
    public const string Queued = "queued";
    public const string Retrying = "retrying";
    public const string Delivered = "delivered";
    public const string DeadLettered = "deadlettered";

    /// <summary>A dead letter an operator deleted: never delivered, kept for the record.</summary>
    public const string Discarded = "discarded";
}

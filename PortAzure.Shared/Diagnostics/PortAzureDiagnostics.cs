using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace PortAzure.Diagnostics;

/// <summary>The project's one ActivitySource and Meter, and the attribute names its spans carry.</summary>
public static class PortAzureDiagnostics
{
    public const string Name = "PortAzure";

    public static readonly ActivitySource ActivitySource = new(Name);

    public static class Tags
    {
        public const string MessagingSystem = "messaging.system";
        public const string MessagingDestination = "messaging.destination.name";
        public const string MessagingOperationType = "messaging.operation.type";
        public const string MessagingOperationName = "messaging.operation.name";
        public const string MessagingMessageId = "messaging.message.id";
        public const string MessagingConsumerGroup = "messaging.consumer.group.name";
        public const string DeliveryId = "portazure.delivery_id";
        public const string RunId = "portazure.run_id";
        public const string Attempt = "portazure.attempt";
        public const string Replays = "portazure.replays";
        public const string Reclaimed = "portazure.reclaimed";
        public const string ErrorType = "error.type";
        public const string Outcome = "portazure.outcome";
        public const string Reason = "portazure.reason";
        public const string Org = "azure_devops.org";
        public const string Webhook = "azure_devops.webhook";
    }

    /// <summary>The messaging system value for Redis streams (not in the semantic conventions' list).</summary>
    public const string RedisStreams = "redis_streams";
}

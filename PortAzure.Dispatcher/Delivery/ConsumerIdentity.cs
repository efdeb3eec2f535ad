using Microsoft.Extensions.Options;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>This instance's consumer name in the group, also the owner written into leases.</summary>
internal sealed class ConsumerIdentity(IOptions<DispatcherOptions> options)
{
    public string Name { get; } = options.Value.ConsumerName
        ?? $"{Environment.MachineName}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}";
}

using Microsoft.Extensions.Options;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>This instance's consumer name in the group, also the owner written into leases.</summary>
internal sealed class ConsumerIdentity(IOptions<DispatcherOptions> options)
{
    // Read on first use, not at construction: hosted services are built before ValidateOnStart
    // runs, and reading options here would report one error instead of all of them.
    private readonly Lazy<string> _name = new(() => options.Value.ConsumerName
        ?? $"{Environment.MachineName}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");

    public string Name => _name.Value;
}

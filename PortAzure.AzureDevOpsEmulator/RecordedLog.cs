using Microsoft.Extensions.Options;

namespace PortAzure.AzureDevOpsEmulator;

/// <summary>
/// What the emulator received, thread-safe, in the order added: the newest <see cref="EmulatorOptions.MaxRecorded"/> (all when
/// 0), so that a long local session does not grow without bound. Dropped ones are counted, so that a check reading the log
/// can tell "never received" from "no longer kept".
/// </summary>
internal sealed partial class RecordedLog<T>(IOptions<EmulatorOptions> options, ILogger<RecordedLog<T>> logger)
{
    private readonly Lock _gate = new();
    private readonly Queue<T> _items = new();
    private readonly int _max = options.Value.MaxRecorded;
    private long _dropped;

    /// <summary>How many were dropped to keep the newest <see cref="EmulatorOptions.MaxRecorded"/>, since the start.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    public void Add(T item)
    {
        var first = false;
        lock (_gate)
        {
            _items.Enqueue(item);
            if (_max > 0 && _items.Count > _max)
            {
                _items.Dequeue();
                first = Interlocked.Increment(ref _dropped) == 1;
            }
        }
        if (first)
        {
            LogFirstDropped(logger, typeof(T).Name, _max);
        }
    }

    public T[] Snapshot()
    {
        lock (_gate)
        {
            return [.. _items];
        }
    }

    public int Count(Func<T, bool>? predicate = null)
    {
        lock (_gate)
        {
            return predicate is null ? _items.Count : _items.Count(predicate);
        }
    }

    /// <summary>
    /// Everything kept, removed in the same step: one added while the caller reads stays for its next take, where a read
    /// and then a clear would drop it unseen.
    /// </summary>
    public T[] Take()
    {
        lock (_gate)
        {
            T[] taken = [.. _items];
            _items.Clear();
            return taken;
        }
    }

    public void Clear()
    {
        lock (_gate)
        {
            _items.Clear();
        }
    }

    [LoggerMessage(Level = LogLevel.Warning,
        Message = "The emulator keeps only the newest {Max} of each kind of record (Emulator:MaxRecorded; 0 keeps all): the oldest {Kind} records are being dropped")]
    private static partial void LogFirstDropped(ILogger logger, string kind, int max);
}

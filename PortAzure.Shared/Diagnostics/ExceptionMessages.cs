namespace PortAzure.Diagnostics;

/// <summary>An exception's messages, outer to inner, for one line of text.</summary>
public static class ExceptionMessages
{
    /// <summary>
    /// Each message of <paramref name="exception"/> and its inner exceptions once, joined by spaces: an inner one that an
    /// outer message already quotes (an argument's without its "(Parameter '…')" too) is not repeated.
    /// </summary>
    public static string Of(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        var messages = new List<string>();
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            var message = WithoutParameter(e);
            if (!messages.Any(m => m.Contains(message, StringComparison.Ordinal)))
            {
                messages.Add(e.Message);
            }
        }
        return string.Join(" ", messages);
    }

    /// <summary>The message, without the " (Parameter '…')" an <see cref="ArgumentException"/> adds to it.</summary>
    public static string WithoutParameter(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        return exception is ArgumentException { ParamName: { } parameter }
            ? exception.Message.Replace($" (Parameter '{parameter}')", "", StringComparison.Ordinal)
            : exception.Message;
    }
}
